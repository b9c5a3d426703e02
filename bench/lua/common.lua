-- Shared by the bench scripts: a done() that prints one JSON line for bench/wrk.py.

-- python -m bench with an auth target sets BENCH_AUTHORIZATION; every request then
-- carries it (servers without auth ignore it, so both sides parse the same bytes).
function auth_header()
  local value = os.getenv("BENCH_AUTHORIZATION")
  if value then wrk.headers["Authorization"] = value end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
