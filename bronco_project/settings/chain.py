"""Chain settings (node URLs, contract addresses, confirmations, the operator key, gas).
Owned by the chain app; star-imported at the end of base.py."""

from django.core.exceptions import ImproperlyConfigured

from bronco_project.settings.env import env_float, env_int, env_list, env_str

# anvil's well-known dev accounts (mnemonic "test test ... junk"). Public knowledge: usable on
# dev chains only, and refused in production.
ANVIL_DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",  # #0 deployer/admin
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",  # #1 operator
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",  # #2 demo user
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",  # #3 demo user
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",  # #4 demo user
)

_bronco_env = env_str("BRONCO_ENV", "local")
_is_production = _bronco_env == "production"

CHAIN_ID = env_int("CHAIN_ID", 31337)
CHAIN_RPC_URL = env_str("CHAIN_RPC_URL", "http://127.0.0.1:8545")
CHAIN_WS_URL = env_str("CHAIN_WS_URL", "ws://127.0.0.1:8545")
# Chains where deploy_contracts may deploy MockUSDT and fund demo users.
CHAIN_DEV_CHAIN_IDS = [int(x) for x in env_list("CHAIN_DEV_CHAIN_IDS", "31337,1337")]

# Contracts. Empty vault address: use the deployment that deploy_contracts recorded for
# CHAIN_ID. Empty USDT address on a dev chain: deploy_contracts deploys MockUSDT.
CHAIN_VAULT_ADDRESS = env_str("CHAIN_VAULT_ADDRESS", "")
CHAIN_USDT_ADDRESS = env_str("CHAIN_USDT_ADDRESS", "")
# Block the listener starts from when it has no checkpoint (0: the vault's deployment block).
CHAIN_START_BLOCK = env_int("CHAIN_START_BLOCK", 0)

# Listener.
CHAIN_CONFIRMATIONS = env_int("CHAIN_CONFIRMATIONS", 12 if _is_production else 1)
# eth_getLogs range: at most CHAIN_BACKFILL_CHUNK_BLOCKS; halved on a range refusal (or a
# read timeout on a wider range) down to CHAIN_BACKFILL_MIN_CHUNK_BLOCKS, doubled back after
# CHAIN_BACKFILL_GROW_AFTER accepted full-size ranges in a row (chain.node_errors).
CHAIN_BACKFILL_CHUNK_BLOCKS = env_int("CHAIN_BACKFILL_CHUNK_BLOCKS", 2000)
CHAIN_BACKFILL_MIN_CHUNK_BLOCKS = env_int("CHAIN_BACKFILL_MIN_CHUNK_BLOCKS", 1)
CHAIN_BACKFILL_GROW_AFTER = env_int("CHAIN_BACKFILL_GROW_AFTER", 8)
# A range's logs are committed in transactions of at most this many (cut at block boundaries).
CHAIN_BACKFILL_COMMIT_LOGS = env_int("CHAIN_BACKFILL_COMMIT_LOGS", 5000)
# A node failing this long raises the alert chain.node_unreachable (resolved on recovery).
CHAIN_NODE_ALERT_AFTER_SECONDS = env_float("CHAIN_NODE_ALERT_AFTER_SECONDS", 60.0)
CHAIN_POLL_INTERVAL_SECONDS = env_float("CHAIN_POLL_INTERVAL_SECONDS", 1.0)
CHAIN_RECONNECT_MAX_DELAY_SECONDS = env_float("CHAIN_RECONNECT_MAX_DELAY_SECONDS", 10.0)
CHAIN_RPC_TIMEOUT_SECONDS = env_float("CHAIN_RPC_TIMEOUT_SECONDS", 15.0)
# What "confirmed" means to the listener: "confirmations" (the head minus
# CHAIN_CONFIRMATIONS - 1), or the node's "finalized" / "safe" block tag, where the node knows
# it (a node that does not is read by confirmation count, with a warning).
CHAIN_FINALITY = env_str("CHAIN_FINALITY", "confirmations")

# Webhooks (chain.webhook): the signing key is secret chain_webhook_signing_key in Vault
# (CHAIN_WEBHOOK_SIGNING_KEY in dev and tests); larger bodies are refused unread (413).
CHAIN_WEBHOOK_MAX_BODY_BYTES = env_int("CHAIN_WEBHOOK_MAX_BODY_BYTES", 1_048_576)
CHAIN_WEBHOOK_MAX_TXS = env_int("CHAIN_WEBHOOK_MAX_TXS", 200)

# Keys. The operator settles; the deployer (admin role) deploys and lists symbols.
CHAIN_OPERATOR_PRIVATE_KEY = env_str(
    "CHAIN_OPERATOR_PRIVATE_KEY", "" if _is_production else ANVIL_DEV_KEYS[1]
)
CHAIN_DEPLOYER_PRIVATE_KEY = env_str(
    "CHAIN_DEPLOYER_PRIVATE_KEY", "" if _is_production else ANVIL_DEV_KEYS[0]
)
if _is_production:
    for _name, _key in (
        ("CHAIN_OPERATOR_PRIVATE_KEY", CHAIN_OPERATOR_PRIVATE_KEY),
        ("CHAIN_DEPLOYER_PRIVATE_KEY", CHAIN_DEPLOYER_PRIVATE_KEY),
    ):
        if _key and _key.lower() in ANVIL_DEV_KEYS:
            raise ImproperlyConfigured(
                f"BRONCO_ENV=production refuses to start: {_name} is a public anvil dev key"
            )

# Dev chains: demo users funded by deploy_contracts (anvil accounts #2-#4) and how much.
CHAIN_DEMO_USERS = env_list(
    "CHAIN_DEMO_USERS",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC,"
    "0x90F79bf6EB2c4f870365E785982E1f101E93b906,"
    "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
)
CHAIN_DEMO_USDT_UNITS = env_int("CHAIN_DEMO_USDT_UNITS", 1_000_000 * 10**6)
CHAIN_DEV_RESERVE_USDT_UNITS = env_int("CHAIN_DEV_RESERVE_USDT_UNITS", 10_000_000 * 10**6)

# Settlement sender: EIP-1559 fees, receipt confirmations, stuck-transaction replacement.
CHAIN_SETTLEMENT_CONFIRMATIONS = env_int(
    "CHAIN_SETTLEMENT_CONFIRMATIONS", 12 if _is_production else 1
)
CHAIN_SETTLEMENT_STUCK_SECONDS = env_float("CHAIN_SETTLEMENT_STUCK_SECONDS", 120.0)
# Ids per batched settlement transaction (settleBatch / settleDeposits / settleRedeems): one
# element costs about 55-90k gas (54k measured by bench/e2e.py), so 200 take 11-18M gas,
# within a 30M block gas limit; a batch above one transaction's cap (CHAIN_TX_GAS_CAP) is
# halved. Each transaction costs its estimate, nonce, broadcast and receipt whatever its
# size: bench/e2e.py at 200/s settled 147/s with 100 against 173/s with 200. Lower it on a
# chain with a smaller block gas limit.
CHAIN_SETTLEMENT_BATCH_MAX = env_int("CHAIN_SETTLEMENT_BATCH_MAX", 200)
# The most gas one transaction may use: 2^24 since EIP-7825 (Osaka). A settlement batch whose
# gas limit (estimate x CHAIN_GAS_LIMIT_PERCENT) would pass it is sent as two halves.
CHAIN_TX_GAS_CAP = env_int("CHAIN_TX_GAS_CAP", 2**24)
CHAIN_FEE_BUMP_PERCENT = env_int("CHAIN_FEE_BUMP_PERCENT", 20)
CHAIN_MIN_PRIORITY_FEE_WEI = env_int("CHAIN_MIN_PRIORITY_FEE_WEI", 1_000_000_000)
# The most a settlement pays per gas: a replacement the market prices higher is sent at this
# cap with the alert chain.settlement_fee_cap:<id>.
CHAIN_MAX_FEE_PER_GAS_WEI = env_int("CHAIN_MAX_FEE_PER_GAS_WEI", 500_000_000_000)
# How far back a settlement's own event (DepositSettled, ...) is looked for when the vault
# reports an id settled but no receipt of ours says so (a lagging node, a lost record).
CHAIN_SETTLEMENT_EVENT_LOOKBACK_BLOCKS = env_int("CHAIN_SETTLEMENT_EVENT_LOOKBACK_BLOCKS", 50_000)
# How long a process keeps a vault parameter it read (defaultExpiry) before reading it again.
CHAIN_VAULT_PARAMS_TTL_SECONDS = env_float("CHAIN_VAULT_PARAMS_TTL_SECONDS", 60.0)
CHAIN_GAS_LIMIT_PERCENT = env_int("CHAIN_GAS_LIMIT_PERCENT", 130)
# What orders and refunds pay through (chain.settlement.settlement_sender): a dotted path to a
# SettlementSender. Tests may name a fake; production refuses anything but the real one.
CHAIN_SETTLEMENT_SENDER_REAL = "chain.services.ChainSettlementSender"
CHAIN_SETTLEMENT_SENDER = env_str("CHAIN_SETTLEMENT_SENDER", CHAIN_SETTLEMENT_SENDER_REAL)

# anvil for `make run` (python manage.py anvil).
CHAIN_ANVIL_BIN = env_str("CHAIN_ANVIL_BIN", "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
CHAIN_ANVIL_STATE_PATH = env_str("CHAIN_ANVIL_STATE_PATH", "var/chain/anvil-state.json")
