-- One wrk script for every scenario: the request shape comes from a spec file that bench/load.py writes
-- (`wrk ... -s bench/request.lua URL -- SPEC`), so each request can carry its own id, filter or unique body.
--
-- Spec lines, tab-separated `key<TAB>value`: method, path, body (optional), header (repeatable, "Name: value"),
-- items (a file, one item a line, fields tab-separated), pick (random | unique), threads, nonce, seed.
-- In path and body, {n} becomes a token unique to the request (nonce-thread-counter) and {1}, {2}... the fields
-- of the picked item. `unique` hands each item out once (thread t takes items t, t+T, ...) and stops the thread
-- when its share runs out (reported as `exhausted`).

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
end

local function read_spec(path)
   local spec = { headers = {} }
   for line in io.lines(path) do
      local key, value = line:match("^([^\t]+)\t(.*)$")
      if key == "header" then
         local name, v = value:match("^([^:]+):%s*(.*)$")
         spec.headers[name] = v
      elseif key then
         spec[key] = value
      end
   end
   return spec
end

local function split_tabs(line)
   local fields = {}
   for field in (line .. "\t"):gmatch("([^\t]*)\t") do
      fields[#fields + 1] = field
   end
   return fields
end

local spec, items, nthreads, pick_random, next_index
local no_fields = {}

function init(args)
   spec = read_spec(args[1])
   items = {}
   if spec.items then
      for line in io.lines(spec.items) do
         if line ~= "" then items[#items + 1] = split_tabs(line) end
      end
   end
   nthreads = tonumber(spec.threads or "1")
   pick_random = spec.pick ~= "unique"
   next_index = tid
   math.randomseed(tonumber(spec.seed or "1") + tid)
   for name, value in pairs(spec.headers) do
      wrk.headers[name] = value
   end
   -- Globals, so that done() can read them from each thread.
   counter, ok, bad, exhausted, first_bad = 0, 0, 0, 0, ""
end

local function fill(template, fields, token)
   return (template:gsub("{(%w+)}", function(name)
      if name == "n" then return token end
      local i = tonumber(name)
      if i then return fields[i] end
      return nil -- not ours (cannot happen in JSON, whose braces hold quotes): left as is
   end))
end

function request()
   counter = counter + 1
   local fields = no_fields
   if #items > 0 then
      if pick_random then
         fields = items[math.random(#items)]
      elseif next_index > #items then
         exhausted = 1
         wrk.thread:stop()
         fields = items[#items]
      else
         fields = items[next_index]
         next_index = next_index + nthreads
      end
   end
   local token = spec.nonce .. "-" .. tid .. "-" .. counter
   local body = nil
   if spec.body then body = fill(spec.body, fields, token) end
   return wrk.format(spec.method, fill(spec.path, fields, token), nil, body)
end

function response(status, headers, body)
   if status < 400 then
      ok = ok + 1
   else
      bad = bad + 1
      if first_bad == "" then first_bad = status .. " " .. (body or ""):sub(1, 300) end
   end
end

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local total_ok, total_bad, any_exhausted, sample = 0, 0, 0, ""
   for _, thread in ipairs(threads) do
      total_ok = total_ok + (thread:get("ok") or 0)
      total_bad = total_bad + (thread:get("bad") or 0)
      any_exhausted = math.max(any_exhausted, thread:get("exhausted") or 0)
      if sample == "" then sample = thread:get("first_bad") or "" end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"ok":%d,"bad":%d,"exhausted":%d,'
         .. '"socket_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"first_bad":%s}\n',
      summary.requests, summary.duration, summary.bytes, total_ok, total_bad, any_exhausted,
      e.connect + e.read + e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      json_string(sample)))
end
