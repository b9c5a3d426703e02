-- POST the same body on every request (the request is built once, so wrk stays fast).
-- Arguments: CONTENT_TYPE BODY where BODY is "bytes:N" (N bytes of 'x') or
-- "json:COUNT:SIZE" (a JSON array of COUNT objects of SIZE bytes each).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local function json_batch(count, size)
  local items = {}
  for i = 1, count do
    local head = string.format('{"i":%d,"pad":"', i)
    local pad = size - #head - 2
    items[i] = head .. string.rep("x", pad) .. '"}'
  end
  return "[" .. table.concat(items, ",") .. "]"
end

function init(args)
  wrk.method = "POST"
  auth_header()
  wrk.headers["Content-Type"] = args[1]
  local kind, a, b = string.match(args[2], "^(%a+):(%d+):?(%d*)$")
  if kind == "bytes" then
    wrk.body = string.rep("x", tonumber(a))
  else
    wrk.body = json_batch(tonumber(a), tonumber(b))
  end
end
