-- wrk script for `bench/jobs.py`: authenticated `POST /v1/swaps`, each request with the next API key of a list and
-- a fresh Idempotency-Key, the multipart body read once from a file. Parameters come from the environment (wrk
-- runs this file before it passes any arguments):
--   WRK_BODY      file holding the multipart body
--   WRK_BOUNDARY  its boundary
--   WRK_KEYS      file with one API key per line
--   WRK_RUN       a prefix that keeps this run's Idempotency-Keys apart from other runs'
--   WRK_RATE      requests per second per wrk thread: sent at fixed times (open loop, wrk2-style pacing by
--                 `delay`); unset or 0: each connection sends its next request as soon as the last is answered
-- `done` prints one JSON line: requests, duration, status codes, socket errors, sends late by more than 5 ms,
-- latency percentiles (ms; from the moment each request is written).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
  int clock_gettime(int clock_id, wrk_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("wrk_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

local body = read_file(assert(os.getenv("WRK_BODY"), "WRK_BODY"))
local content_type = "multipart/form-data; boundary=" .. assert(os.getenv("WRK_BOUNDARY"), "WRK_BOUNDARY")
local run = os.getenv("WRK_RUN") or tostring(os.time())
local rate = tonumber(os.getenv("WRK_RATE") or "0")
local keys = {}
for line in read_file(assert(os.getenv("WRK_KEYS"), "WRK_KEYS")):gmatch("[^\r\n]+") do
  keys[#keys + 1] = "Bearer " .. line
end

local threads = {}
thread_no = 0 -- set per thread by `setup` (a global: `thread:set` writes the thread's globals)

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("thread_no", #threads)
end

-- Per thread (each thread has its own Lua state).
local n = 0
codes = {}
late = 0
local headers = { ["Content-Type"] = content_type }

function request()
  n = n + 1
  headers["Authorization"] = keys[(n % #keys) + 1]
  headers["Idempotency-Key"] = run .. "-" .. thread_no .. "-" .. n
  return wrk.format("POST", nil, headers, body)
end

function response(status)
  codes[status] = (codes[status] or 0) + 1
end

if rate > 0 then
  local interval = 1000 / rate
  local next_due = nil
  -- Each connection that is ready for its next request takes the thread's next send time: with enough
  -- connections the sends keep to the schedule whatever the latency (a send that could not is counted as late).
  function delay()
    local now = now_ms()
    next_due = next_due or now
    local due = next_due
    next_due = next_due + interval
    local wait = due - now
    if wait < -5 then
      late = late + 1
    end
    return wait > 0 and math.floor(wait + 0.5) or 0
  end
end

function done(summary, latency, requests)
  local all_codes, all_late = {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("codes")) do
      all_codes[tostring(status)] = (all_codes[tostring(status)] or 0) + count
    end
    all_late = all_late + thread:get("late")
  end
  local parts = {}
  for status, count in pairs(all_codes) do
    parts[#parts + 1] = string.format('"%s": %d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "codes": {%s}, "socket_errors": {"connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d}, "sent_late_over_5ms": %d, "p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, ' ..
    '"max_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout,
    all_late, latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
