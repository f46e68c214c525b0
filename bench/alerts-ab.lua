-- wrk script for alertbridge: the reference's load/alerts.lua, unchanged, plus one
-- adaptation of how an answer is classified.
--
--   BENCH_ALERTS_LUA=<copy of ../shared/bench>/load/alerts.lua SECRET=... \
--     wrk -t1 -c64 -d15s --latency -s bench/alerts-ab.lua http://127.0.0.1:PORT/webhook
--
-- alerts.lua counts a 2xx as a duplicate when its body contains the word
-- "duplicate"; alertbridge always answers {"ok":true,"id":…,"duplicate":false|true},
-- so here a 2xx is a duplicate only when it says "duplicate":true. Requests (bodies,
-- ids, DUP_EVERY), counters and the BENCH line are alerts.lua's own.
local path = os.getenv("BENCH_ALERTS_LUA")
if not path or path == "" then
  error("BENCH_ALERTS_LUA must name the reference's load/alerts.lua")
end
dofile(path)

function response(status, hdrs, body)
  if status >= 200 and status < 300 then
    if body and string.find(body, '"duplicate":true', 1, true) then
      resp_dupe = resp_dupe + 1
    else
      resp_fresh = resp_fresh + 1
    end
  else
    resp_non2xx = resp_non2xx + 1
    if status == 401 then resp_401 = resp_401 + 1
    elseif status == 422 then resp_422 = resp_422 + 1
    elseif status >= 500 then resp_5xx = resp_5xx + 1
    else resp_other = resp_other + 1 end
  end
end
