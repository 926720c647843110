-- Every hold finds which of a wallet's accounts are live grants by joining credit_grants on
-- account_id (the wallet read, and the condition a hold planned without a read carries). Without
-- an index that join reads every organisation's grants.
CREATE INDEX credit_grants_account ON credit_grants (account_id);
