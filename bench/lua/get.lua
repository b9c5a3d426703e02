-- GET with an If-None-Match header (the ETag of the URL), for repeat reads answered by 304.
-- Arguments: ETAG
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

function init(args)
  wrk.method = "GET"
  auth_header()
  wrk.headers["If-None-Match"] = args[1]
end
