"""The `leads-gql` command as a new user runs it: real processes, real HTTP."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import httpx
import jwt
import pytest

from tests.server import Server, cli_env, run_cli

pytestmark = pytest.mark.slow


def test_serve_with_development_secret_end_to_end(tmp_path: Path) -> None:
    env = cli_env()
    flow = str(uuid.uuid4())
    with Server(tmp_path, env) as server:
        secret_file = tmp_path / ".leads-gql-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert "leads-gql token" in server.output()
        token = run_cli(
            "token", "--scope", "leads:read leads:write", cwd=tmp_path, env=env
        )
        assert token.returncode == 0, token.stderr
        assert token.stdout.count("\n") == 1 and token.stdout.count(".") == 2
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}

        created = httpx.post(
            f"{server.url}/api/v1/leads/",
            json={"chatflowid": flow, "email": "ada@example.com"},
            headers=headers,
        )
        assert created.status_code == 200, created.text
        listed = httpx.post(
            f"{server.url}/graphql",
            json={
                "query": "query($f: ID!) { leadsByChatflow(chatflowid: $f) "
                "{ id name email phone chatflowid chatId createdDate } }",
                "variables": {"f": flow},
            },
            headers=headers,
        )
        assert listed.json() == {"data": {"leadsByChatflow": [created.json()]}}
        assert httpx.get(f"{server.url}/leads/{flow}").status_code == 401
        assert server.output().count("ada@example.com") == 0
        secret = secret_file.read_text()

    # A restart reuses the secret, so the old token still works.
    with Server(tmp_path, env) as server:
        assert secret_file.read_text() == secret
        again = httpx.get(f"{server.url}/leads/{flow}", headers=headers)
        assert again.json() == [created.json()]
    assert (tmp_path / "leads.db").exists()


def test_serve_with_workers(tmp_path: Path) -> None:
    """`--workers 2`: two processes answer, on one database, with one secret."""
    env = cli_env()
    flow = str(uuid.uuid4())
    with Server(tmp_path, env, "--workers", "2") as server:
        token = run_cli("token", cwd=tmp_path, env=env).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(headers=headers) as client:
            ids = set()
            for i in range(40):
                # A new connection each time: the kernel spreads them.
                answer = httpx.post(
                    f"{server.url}/leads",
                    json={"chatflowid": flow, "name": f"n{i}"},
                    headers={**headers, "Connection": "close"},
                )
                assert answer.status_code == 200, answer.text
                ids.add(answer.json()["id"])
            listed = client.get(f"{server.url}/leads/{flow}").json()
        assert {lead["id"] for lead in listed} == ids
        output = server.output()
        started = {
            line for line in output.splitlines() if "Started server process" in line
        }
        assert len(started) == 2, output
    assert server.process is not None and server.process.returncode == 0


def test_serve_refuses_a_bad_worker_count(tmp_path: Path) -> None:
    for bad in ("0", "-1", "two"):
        answer = run_cli("serve", "--workers", bad, cwd=tmp_path, env=cli_env())
        assert answer.returncode == 2
        assert "positive whole number" in answer.stderr


def test_token_options_and_configured_claims(tmp_path: Path) -> None:
    env = cli_env(
        LEADS_JWT_SECRET="s" * 40, LEADS_JWT_ISSUER="iss-x", LEADS_JWT_AUDIENCE="aud-y"
    )
    flow = str(uuid.uuid4()).upper()
    out = run_cli(
        "token", "--scope", "leads:write", "--chatflow", flow, "--ttl", "60",
        "--sub", "widget", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(
        out.stdout.strip(), "s" * 40, algorithms=["HS256"], audience="aud-y"
    )
    assert claims["sub"] == "widget"
    assert claims["scope"] == "leads:write"
    assert claims["chatflows"] == [flow.lower()]
    assert claims["iss"] == "iss-x"
    assert claims["exp"] - claims["iat"] == 60
    assert not (tmp_path / ".leads-gql-secret").exists()


def test_token_scopes_given_once_or_repeated(tmp_path: Path) -> None:
    env = cli_env(LEADS_JWT_SECRET="s" * 40)

    def scope(*options: str) -> str:
        out = run_cli("token", *options, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        claims = jwt.decode(out.stdout.strip(), "s" * 40, algorithms=["HS256"])
        return str(claims["scope"])

    assert scope() == "leads:read leads:write"
    assert scope("--scope", "leads:read leads:delete") == "leads:read leads:delete"
    repeated = ("--scope", "leads:read", "--scope", "leads:delete leads:read")
    assert scope(*repeated) == "leads:read leads:delete"


def test_token_refuses_bad_arguments(tmp_path: Path) -> None:
    env = cli_env(LEADS_JWT_SECRET="s" * 40)
    assert run_cli("token", "--chatflow", "nope", cwd=tmp_path, env=env).returncode != 0
    assert run_cli("token", "--ttl", "-5", cwd=tmp_path, env=env).returncode != 0


def test_bad_configuration_fails_naming_the_variable(tmp_path: Path) -> None:
    env = cli_env(LEADS_DATABASE_URL="mysql://nope", LEADS_JWT_SECRET="s" * 40)
    out = run_cli("serve", cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert "LEADS_DATABASE_URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_migrate_refuses_a_schema_that_is_behind(tmp_path: Path) -> None:
    env = cli_env(LEADS_DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")
    out = run_cli("serve", "--no-migrate", cwd=tmp_path, env=env)
    assert out.returncode == 1
    assert "leads-gql migrate" in out.stderr
    assert "Traceback" not in out.stderr

    migrated = run_cli("migrate", cwd=tmp_path, env=env)
    assert migrated.returncode == 0, migrated.stderr
    with Server(tmp_path, env, "--no-migrate") as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_python_dash_m_and_export_schema(tmp_path: Path) -> None:
    out = run_cli("export-schema", cwd=tmp_path, env=cli_env())
    assert out.returncode == 0
    assert "leadsByChatflow(chatflowid: ID!): [Lead!]!" in out.stdout


def test_a_delete_token_erases_a_contact_across_flows(tmp_path: Path) -> None:
    """What README's erasure request does: a leads:delete token, one request."""
    env = cli_env()
    flows = [str(uuid.uuid4()) for _ in range(3)]
    with Server(tmp_path, env) as server:
        writer = run_cli("token", cwd=tmp_path, env=env).stdout.strip()
        for flow, contact in zip(
            flows,
            [
                {"email": "Ada@Example.com"},
                {"phone": "(44) 20-7946-0958", "name": "Ada"},
                {"email": "grace@example.com"},
            ],
            strict=True,
        ):
            answer = httpx.post(
                f"{server.url}/leads",
                json={"chatflowid": flow, **contact},
                headers={"Authorization": f"Bearer {writer}"},
            )
            assert answer.status_code == 200, answer.text
        token = run_cli(
            "token", "--scope", "leads:delete", "--sub", "dpo", cwd=tmp_path, env=env
        )
        assert token.returncode == 0, token.stderr
        erased = httpx.post(
            f"{server.url}/graphql",
            json={
                "query": "mutation($e: String, $p: String) "
                "{ eraseContact(email: $e, phone: $p) }",
                "variables": {"e": "ada@example.com", "p": "+44 20 7946 0958"},
            },
            headers={"Authorization": f"Bearer {token.stdout.strip()}"},
        )
        assert erased.json() == {"data": {"eraseContact": 2}}
        left = [
            httpx.get(
                f"{server.url}/leads/{flow}",
                headers={"Authorization": f"Bearer {writer}"},
            ).status_code
            for flow in flows
        ]
        assert left == [404, 404, 200]
        output = server.output()
    assert output.count('"sub":"dpo"') == 2
    assert output.count('"cause":"eraseContact"') == 2
    assert "ada@example.com" not in output.lower() and "7946" not in output


def test_purge_refuses_bad_arguments_and_a_schema_that_is_behind(
    tmp_path: Path,
) -> None:
    env = cli_env(LEADS_DATABASE_URL=f"sqlite:///{tmp_path}/fresh.db")
    for args in ([], ["--older-than-days", "0"], ["--older-than-days", "x"]):
        out = run_cli("purge", *args, cwd=tmp_path, env=env)
        assert out.returncode == 2, args
        assert "--older-than-days" in out.stderr
    out = run_cli("purge", "--older-than-days", "36501", cwd=tmp_path, env=env)
    assert out.returncode == 2 and "at most 36500" in out.stderr
    out = run_cli("purge", "--older-than-days", "30", cwd=tmp_path, env=env)
    assert out.returncode == 1
    assert "leads-gql migrate" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
