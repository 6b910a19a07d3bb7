-- wrk script: POST /tasks with a fresh client-chosen id per request, and write the id of every
-- acknowledged (2xx) submission to acked-<thread>.txt so the caller can check none was lost.
local counter = 0
local thread_id = 0
local pending = {}
local acked = {}
local out = nil

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  math.randomseed(os.time() + tid * 7919)
  out = io.open((os.getenv("ACKED_DIR") or ".") .. "/acked-" .. tid .. ".txt", "w")
end

local function uuid()
  local t = "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx"
  return (string.gsub(t, "[xy]", function(c)
    local v = (c == "x") and math.random(0, 15) or math.random(8, 11)
    return string.format("%x", v)
  end))
end

local headers = {["Content-Type"] = "application/json"}
if os.getenv("CUBE_TOKEN") then
  headers["Authorization"] = "Bearer " .. os.getenv("CUBE_TOKEN")
end

function request()
  local id = uuid()
  table.insert(pending, id)
  local body = '{"task":{"id":"' .. id .. '","image":"cube-sim/task:latest","cmd":["sleep","600"],"cpu":0.001}}'
  return wrk.format("POST", "/tasks", headers, body)
end

function response(status, headers, body)
  -- HTTP/1.1 without pipelining answers in order on each connection, but wrk's connections
  -- interleave; the id is read back from the answer instead.
  if status == 201 or status == 200 then
    local id = string.match(body, '"id":"([0-9a-f%-]+)"')
    if id then
      out:write(id, "\n")
      counter = counter + 1
      if counter % 1000 == 0 then out:flush() end
    end
  end
end
