-- prune_runs: the retention sweep: drop finished runs past the window or beyond the cap.
-- KEYS[1] runs_terminal ZSET
-- ARGV[1] now_ms  ARGV[2] retention ms  ARGV[3] max finished runs
-- Returns the dropped run ids (the caller deletes their keys with drop_runs).
return prune_finished_runs(KEYS[1], tonumber(ARGV[1]) - tonumber(ARGV[2]), tonumber(ARGV[3]))
