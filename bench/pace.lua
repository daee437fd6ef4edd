-- wrk script for bench/load.sh's equal-load steps: every connection waits PACE_MS
-- milliseconds (default 1) before each request. wrk starts its latency clock when it
-- writes the request, so the wait is not counted in the latency.
local pace = tonumber(os.getenv("PACE_MS")) or 1

function delay()
    return pace
end
