-- The matcher follows who is idle from the workers' state events (domain/availability) and
-- locks the workers it chose by primary key: nothing reads workers by status any more. The
-- partial index of idle workers only made every state change (about seven per order) an
-- update that could not stay on its page (not HOT), with a new entry in each index. Without
-- it, and with room left on each page, a state change can be a HOT update.
DROP INDEX workers_idle;
ALTER TABLE workers SET (fillfactor = 70);
