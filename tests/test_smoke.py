import httpx
import pytest

from tests.conftest import new_id

pytestmark = pytest.mark.anyio


async def test_create_then_list(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    flow = new_id()
    created = await client.post(
        "/leads", json={"chatflowid": flow, "name": "Ada"}, headers=auth
    )
    assert created.status_code == 200, created.text
    listed = await client.get(f"/api/v1/leads/{flow}/", headers=auth)
    assert listed.json() == [created.json()]
