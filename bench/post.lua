-- wrk script for `make bench`: POST one JSON body with optional credentials, and print the
-- run's figures as one JSON line that bench/load.py reads.
--   BENCH_BODY_FILE  path of the request body (JSON, or a JSON header and binary tensors)
--   BENCH_HEADER     optional "name: value" (a bearer token or an API key); kept in the
--                    environment so that no credential is written to a file or a log
--   BENCH_EXTRA_HEADERS  optional further "name: value" lines (Inference-Header-Content-Length
--                    of a body with binary tensors; a Content-Type replaces the default)
local file = assert(io.open(assert(os.getenv("BENCH_BODY_FILE"), "BENCH_BODY_FILE unset"), "rb"))
local body = file:read("*a")
file:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

local extra = os.getenv("BENCH_HEADER")
if extra ~= nil and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.+)$")
  wrk.headers[name] = value
end

local extras = os.getenv("BENCH_EXTRA_HEADERS")
if extras ~= nil then
  for line in extras:gmatch("[^\n]+") do
    local name, value = line:match("^([^:]+):%s*(.+)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean))
end
