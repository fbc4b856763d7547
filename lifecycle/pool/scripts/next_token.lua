-- next_token: a fresh fencing token, for a client-side MongoDB write (an activation, a restore, a checkpoint's
-- order); see fresh_token.
-- KEYS[1] epoch STRING
-- Returns the token.
return fresh_token(KEYS[1])
