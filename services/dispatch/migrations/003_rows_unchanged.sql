-- Optimistic steps (common.deferred, optimistic Tx): a step reads its rows without locking them
-- and sends all its writes as one statement that first locks the rows again and checks that
-- none has changed since (same xmin). This raises if one has, so the whole statement, writes
-- and all, is undone, and the step runs again with locks. SQLSTATE 40001 (serialization
-- failure): the usual meaning, "retry me".
CREATE FUNCTION rows_unchanged(unchanged boolean) RETURNS boolean
    LANGUAGE plpgsql COST 1000 AS $$
BEGIN
    IF NOT unchanged THEN
        RAISE EXCEPTION 'a row changed since it was read' USING ERRCODE = '40001';
    END IF;
    RETURN true;
END $$;
