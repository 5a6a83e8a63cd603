-- One bench.py scenario for wrk, a load generator in C whose CPU per round trip is small next to what it
-- measures (an aiohttp client spends about a third of openhqm's). bench.py runs
--
--   wrk -s wrk_scenario.lua URL -- MODE BODY PREFER EXPECT
--
--   MODE    "single": every request is the same POST, timed by wrk itself (its percentiles include wrk's
--             correction for responses that stalled a connection, so p99 reads a little higher than a
--             client that only times what it sent);
--           "long-poll": POST, then GET the answer's Location with ?wait=30, timed here from the POST to
--             the answer; bench.py runs it with one connection per thread, as the two steps keep their
--             state per thread.
--   BODY    the JSON body of the POST, or "-" for a GET without a body ("single" only)
--   PREFER  the Prefer header ("wait=30"), or "-" for none
--   EXPECT  text every good answer contains ("COMPLETED"), or "-" to check the status only
--
-- An answer outside 2xx, or without EXPECT, counts as failed; done() prints one line "wrk-json {...}".

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

local function now_us()
   ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
   return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

-- Per thread (each has its own Lua state): what it counts, read by done() through thread:get.
mode, failed, round_trips, latencies_us = nil, 0, 0, {}
local expect, submit, next_request, started

local function good(status, body)
   return status >= 200 and status < 300 and (expect == nil or body:find(expect, 1, true) ~= nil)
end

function init(args)
   mode, expect = args[1], args[4] ~= "-" and args[4] or nil
   local headers = { ["Content-Type"] = "application/json" }
   if args[3] ~= "-" then
      headers["Prefer"] = args[3]
   end
   if mode == "single" then -- a static request: wrk formats it once
      wrk.method = args[2] == "-" and "GET" or "POST"
      wrk.body = args[2] ~= "-" and args[2] or nil
      for name, value in pairs(headers) do
         wrk.headers[name] = value
      end
      return
   end
   submit = wrk.format("POST", wrk.path, headers, args[2])
   next_request = submit
   -- Defined only here: wrk sends a static request unless a global request() exists.
   request = function()
      if next_request == submit then
         started = now_us()
      end
      return next_request
   end
end

function response(status, headers, body)
   if mode == "single" then
      if not good(status, body) then
         failed = failed + 1
      end
      return
   end
   if next_request == submit then
      local location = headers["location"] or headers["Location"]
      if status == 202 and location then
         next_request = "GET " .. location .. "?wait=30 HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n\r\n"
      else
         failed = failed + 1
      end
      return
   end
   if good(status, body) then
      round_trips = round_trips + 1
      latencies_us[round_trips] = now_us() - started
   else
      failed = failed + 1
   end
   next_request = submit
end

local function percentile(sorted, p)
   if #sorted == 0 then
      return 0
   end
   return sorted[math.min(#sorted, math.floor(#sorted * p / 100) + 1)]
end

function done(summary, latency, requests)
   local failed_total, timed, samples = 0, 0, {}
   local timed_here = threads[1]:get("mode") == "long-poll"
   for _, thread in ipairs(threads) do
      failed_total = failed_total + thread:get("failed")
      timed = timed + thread:get("round_trips")
      for _, value in ipairs(thread:get("latencies_us")) do
         samples[#samples + 1] = value
      end
   end
   local ok, p50_us, p99_us
   if timed_here then -- two requests a round trip
      table.sort(samples)
      ok, p50_us, p99_us = timed, percentile(samples, 50), percentile(samples, 99)
   else
      ok, p50_us, p99_us = summary.requests - failed_total, latency:percentile(50), latency:percentile(99)
   end
   local errors = summary.errors
   io.write(string.format(
      'wrk-json {"round_trips": %d, "failed": %d, "duration_s": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, '
         .. '"socket_errors": %d, "requests": %d}\n',
      ok, failed_total, summary.duration / 1e6, p50_us / 1000, p99_us / 1000,
      errors.connect + errors.read + errors.write + errors.timeout, summary.requests))
end
