-- wrk script for the Neutrino benchmark: every request is
--   POST <url>  Content-Type: application/json  {"args":{"x":42,"label":"bench"}}
-- (override the body with env BENCH_BODY).
--
-- done() prints one machine-readable line that bench/run.py parses (wrk's own
-- --latency text is parsed as a fallback and kept in the logs). It runs once,
-- after the test, so it costs nothing per request. No response() callback is
-- defined on purpose: defining one makes wrk hand every response to Lua.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"args":{"x":42,"label":"bench"}}'
wrk.headers["Content-Type"] = "application/json"
-- BENCH_AUTH: an API key, sent as a bearer token (the neutrino-auth row).
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = "Bearer " .. auth end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d bytes=%d status_errors=%d " ..
    "connect=%d read=%d write=%d timeout=%d " ..
    "p50_us=%d p75_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
