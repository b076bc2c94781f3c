-- wrk script for the leads-gql benchmark (wrk 4.x, LuaJIT).
--
-- Environment (set by bench/run.py):
--   WRK_MODE   rest_list | gql_list | rest_create | gql_create
--   WRK_TOKEN  bearer token (sent to every target, ceilings included: same bytes)
--   WRK_FLOWS  number of listed chat flows; requests rotate over all of them
--   WRK_NONCE  8 hex digits, unique per run: lead ids are NONCE-TTTT-4000-8000-COUNTER
--   WRK_OUT    where done() writes the run's figures as JSON
--   WRK_ACKED  (create modes) where done() writes the ids answered with 200
--   WRK_PREFIX (rest_list) a path prefix, e.g. /dbjson for the ceiling's DB-JSON route
--
-- A response counts as an error when its status is not 200 or its body is not the
-- expected one: GraphQL answers errors with HTTP 200, so the body is checked too.

local mode = os.getenv("WRK_MODE") or "rest_list"
local token = os.getenv("WRK_TOKEN") or ""
local nflows = tonumber(os.getenv("WRK_FLOWS") or "100")
local nonce = os.getenv("WRK_NONCE") or "00000000"
local out_path = os.getenv("WRK_OUT")
local acked_path = os.getenv("WRK_ACKED")
local prefix = os.getenv("WRK_PREFIX") or ""

local FIELDS = "id name email phone chatflowid chatId createdDate"
local GQL_LIST = '{"operationName":"Leads","query":"query Leads($f: ID!) '
  .. '{ leadsByChatflow(chatflowid: $f) { ' .. FIELDS .. ' } }","variables":{"f":"'
local GQL_CREATE = '{"operationName":"Create","query":"mutation Create($input: '
  .. 'LeadInput!) { createLead(input: $input) { ' .. FIELDS .. ' } }","variables":'
  .. '{"input":'

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  ok = 0
  bad = 0
  locked = 0
  acked = {}
  math.randomseed(os.time() * 16 + tid)
  cursor = math.random(0, nflows - 1)
  wrk.headers["Authorization"] = "Bearer " .. token
  if mode ~= "rest_list" then
    wrk.headers["Content-Type"] = "application/json"
  end
end

local function flow(k)
  return string.format("00000000-0000-4000-8000-%012x", k)
end

local function new_lead()
  counter = counter + 1
  local id = string.format("%s-%04x-4000-8000-%012x", nonce, tid, counter)
  local n = counter % 10000000
  return string.format(
    '{"id":"%s","chatflowid":"00000000-0000-4000-9000-%012x","chatId":"bench-%s-%d",'
      .. '"name":"Bench Lead %d","email":"bench%d@example.com","phone":"+1 555 %07d"}',
    id, counter % 100, nonce, counter, n, n, n)
end

function request()
  if mode == "rest_list" then
    cursor = (cursor + 1) % nflows
    return wrk.format("GET", prefix .. "/api/v1/leads/" .. flow(cursor))
  elseif mode == "gql_list" then
    cursor = (cursor + 1) % nflows
    return wrk.format("POST", "/graphql", nil, GQL_LIST .. flow(cursor) .. '"}}')
  elseif mode == "rest_create" then
    return wrk.format("POST", "/api/v1/leads", nil, new_lead())
  else
    return wrk.format("POST", "/graphql", nil, GQL_CREATE .. new_lead() .. "}}")
  end
end

function response(status, headers, body)
  if string.find(body, "locked", 1, true) then
    locked = locked + 1
  end
  if status ~= 200 or string.find(body, '"errors"', 1, true) then
    bad = bad + 1
    return
  end
  if mode == "rest_list" or mode == "gql_list" then
    if string.find(body, '"createdDate"', 1, true) then
      ok = ok + 1
    else
      bad = bad + 1
    end
  else
    local id = string.match(body, '"id":"([0-9a-f%-]+)"')
    if id then
      ok = ok + 1
      acked[#acked + 1] = id
    else
      bad = bad + 1
    end
  end
end

function done(summary, latency, requests)
  local n_ok, n_bad, n_locked = 0, 0, 0
  local ids = {}
  for _, t in ipairs(threads) do
    n_ok = n_ok + t:get("ok")
    n_bad = n_bad + t:get("bad")
    n_locked = n_locked + t:get("locked")
    if acked_path then
      for _, id in ipairs(t:get("acked")) do
        ids[#ids + 1] = id
      end
    end
  end
  if acked_path then
    local f = assert(io.open(acked_path, "w"))
    f:write(table.concat(ids, "\n"))
    f:close()
  end
  local e = summary.errors
  local f = assert(io.open(out_path, "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"ok":%d,"bad":%d,"locked":%d,'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"status_errors":%d,'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}',
    summary.requests, summary.duration, summary.bytes, n_ok, n_bad, n_locked,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
  f:close()
end
