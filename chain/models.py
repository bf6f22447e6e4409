"""What the chain app stores: contract deployments, the listener's checkpoint, every vault
event it acted on, quarantined logs and alerts, and the settlement transactions it sent."""

from django.db import models
from django.db.models import Q

from core.money import UintField


class ContractDeployment(models.Model):
    """The contract set deployed on one chain (written by deploy_contracts, reused by it)."""

    chain_id = models.BigIntegerField(unique=True)
    vault_address = models.CharField(max_length=42)
    usdt_address = models.CharField(max_length=42)
    tokens = models.JSONField(default=dict, help_text="symbol -> stock token address")
    deploy_block = models.BigIntegerField()
    artifacts_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"chain {self.chain_id}: vault {self.vault_address}"


class ChainCursor(models.Model):
    """The listener's checkpoint for one contract: every log up to `block_number` is acted on.

    `head_number` is the latest head the listener saw, so lag = head_number - block_number.
    """

    chain_id = models.BigIntegerField()
    address = models.CharField(max_length=42)
    block_number = models.BigIntegerField()
    block_hash = models.CharField(max_length=66, blank=True)
    head_number = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("chain_id", "address"), name="chaincursor_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.address}@{self.chain_id}: block {self.block_number}"

    @property
    def lag(self) -> int:
        return max(0, self.head_number - self.block_number)


class ChainEvent(models.Model):
    """One confirmed vault log. Among live rows (not removed by a reorg) each is written once,
    keyed by what it is: (chain id, event name, vault id) for the events that carry an id
    (a Deposit, a Redeem, a settlement of an id, ...), so a log re-mined in another block
    or position after a reorg is recognised as the same event; by (chain id, tx hash, log
    index) for the others. Removed rows stay as history (`removed_at`)."""

    chain_id = models.BigIntegerField()
    tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    block_number = models.BigIntegerField(db_index=True)
    block_hash = models.CharField(max_length=66)
    address = models.CharField(max_length=42)
    name = models.CharField(max_length=64)  # indexed: Meta (no LIKE twin)
    args = models.JSONField(default=dict)
    vault_id = UintField(
        null=True, blank=True, help_text="The deposit, redeem or refund id the event is about"
    )
    order_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    removed_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when a reorg removed this confirmed log (alerted)"
    )
    resolved_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="For a removed Deposit/Redeem: when its order was released (the request "
        "re-appeared) or closed (it vanished for good)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("block_number", "log_index")
        constraints = [
            models.UniqueConstraint(
                fields=("chain_id", "tx_hash", "log_index"),
                condition=Q(removed_at__isnull=True),
                name="chainevent_unique_live_log",
            ),
            models.UniqueConstraint(
                fields=("chain_id", "name", "vault_id"),
                condition=Q(removed_at__isnull=True) & Q(vault_id__isnull=False),
                name="chainevent_unique_live_vault_id",
            ),
        ]
        indexes = [
            models.Index(fields=("name",), name="chainevent_name"),
            # What a batch asks of every log it writes: was this request removed by a reorg
            # and not yet resolved (chain.ingest._removed_unresolved)? Rare rows, small index.
            models.Index(
                fields=("chain_id", "name", "vault_id"),
                condition=Q(removed_at__isnull=False) & Q(resolved_at__isnull=True),
                name="chainevent_removed_open",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.tx_hash}#{self.log_index}"


class QuarantinedLog(models.Model):
    """A log the listener could not act on (foreign address, unknown topic, undecodable data,
    a cancel for an unknown deposit). Kept for an operator; the listener carries on."""

    chain_id = models.BigIntegerField()
    tx_hash = models.CharField(max_length=66)
    log_index = models.PositiveIntegerField()
    block_number = models.BigIntegerField()
    block_hash = models.CharField(max_length=66)
    address = models.CharField(max_length=42)
    topics = models.JSONField(default=list)
    data = models.TextField(blank=True)
    reason = models.CharField(max_length=64, db_index=True)
    detail = models.TextField(blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(
                fields=("chain_id", "tx_hash", "log_index"), name="quarantine_unique_log"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reason}: {self.tx_hash}#{self.log_index}"


class NonceSequence(models.Model):
    """The next nonce of one signing key on one chain. Allocated under a row lock, so every
    worker sending with the key takes a distinct, consecutive nonce."""

    chain_id = models.BigIntegerField()
    address = models.CharField(max_length=42)
    next_nonce = models.BigIntegerField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("chain_id", "address"), name="nonce_unique_key"),
            models.CheckConstraint(condition=Q(next_nonce__gte=0), name="nonce_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.address}@{self.chain_id}: {self.next_nonce}"


class SettlementKind(models.TextChoices):
    DEPOSIT = "deposit", "settleDeposit"
    REDEEM = "redeem", "settleRedeem"
    REFUND = "refund", "refundDeposit"


class BatchKind(models.TextChoices):
    """What a batched settlement transaction settles, and the vault function it calls."""

    DEPOSIT = "deposit", "settleDeposits"
    REDEEM = "redeem", "settleRedeems"
    MIXED = "mixed", "settleBatch (deposits and redeems)"


class SettlementStatus(models.TextChoices):
    SIGNED = "SIGNED", "Signed, not yet seen by the node"
    SENT = "SENT", "Sent, waiting for confirmations"
    CONFIRMED = "CONFIRMED", "Settled on chain"
    REVERTED = "REVERTED", "Reverted"


class SettlementTx(models.Model):
    """The one settlement of a deposit or redeem id, or the one payment of a manual refund id
    (unique on chain, kind, id; for a refund `onchain_id` is the refund id and `deposit_id`
    the deposit it pays back).

    The nonce and the signed transaction are committed before it is broadcast, so a crash at
    any point leaves a row that `settlement_check` can re-broadcast or replace.
    """

    chain_id = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=SettlementKind.choices)
    onchain_id = UintField()
    deposit_id = UintField(
        null=True, blank=True, help_text="For a refund: the vault deposit id it pays back"
    )
    order_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    user_address = models.CharField(
        max_length=42, blank=True, help_text="The depositor / redeemer the settlement names"
    )
    symbol = models.CharField(max_length=32, blank=True)
    request_amount = UintField(
        default=0, help_text="The deposit's USDT (deposit, refund) or the redeem's shares"
    )
    usdt_amount = UintField()
    token_amount = UintField()
    cycle_id = UintField(null=True, blank=True)
    price_per_share = UintField(null=True, blank=True, help_text="USDT units per whole share")
    fee_usdt = UintField(null=True, blank=True)
    batch = models.ForeignKey(
        "SettlementBatch",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="settlements",
        help_text="The batched transaction that carries this settlement, if any",
    )
    sender = models.CharField(max_length=42)
    nonce = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=10, choices=SettlementStatus.choices, default=SettlementStatus.SIGNED
    )
    tx_hash = models.CharField(max_length=66, blank=True, db_index=True)
    block_number = models.BigIntegerField(null=True, blank=True)
    already_settled = models.BooleanField(
        default=False, help_text="The vault reported this id settled by an earlier attempt"
    )
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(
                fields=("chain_id", "kind", "onchain_id"), name="settlement_unique_id"
            ),
            models.UniqueConstraint(
                fields=("chain_id", "sender", "nonce"), name="settlement_unique_nonce"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=SettlementKind.values), name="settlement_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(status__in=SettlementStatus.values), name="settlement_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(usdt_amount__gte=0) & Q(token_amount__gte=0),
                name="settlement_amounts_non_negative",
            ),
            models.CheckConstraint(
                condition=~Q(kind="refund") | (Q(deposit_id__isnull=False) & Q(usdt_amount__gt=0)),
                name="settlement_refund_names_its_deposit",
            ),
        ]
        indexes = [
            models.Index(
                fields=("sent_at",),
                name="settlement_open_by_sent_at",
                condition=Q(status__in=["SIGNED", "SENT"]),
            ),
        ]

    def __str__(self) -> str:
        return f"settle {self.kind} {self.onchain_id} {self.status}"


class SettlementBatch(models.Model):
    """One batched settlement transaction (settleDeposits / settleRedeems, or settleBatch for
    deposits and redeems together) carrying many ids: each id keeps its own SettlementTx
    (linked here, with its own kind), so `settlement_check` per id works; the batch holds the
    nonce, its attempts and the receipt verdict for all of them."""

    chain_id = models.BigIntegerField()
    kind = models.CharField(max_length=8, choices=BatchKind.choices)
    sender = models.CharField(max_length=42)
    nonce = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=10, choices=SettlementStatus.choices, default=SettlementStatus.SIGNED
    )
    tx_hash = models.CharField(max_length=66, blank=True, db_index=True)
    block_number = models.BigIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    order_id = None  # a batch belongs to many orders (its settlements name them)
    already_settled = False

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.UniqueConstraint(
                fields=("chain_id", "sender", "nonce"), name="settlementbatch_unique_nonce"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=BatchKind.values), name="settlementbatch_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"batch {self.kind} #{self.pk} {self.status}"


class SettlementAttempt(models.Model):
    """Each signed broadcast of a settlement (the first, and every fee-bumped replacement with
    the same nonce). Whichever one is mined settles the id."""

    settlement = models.ForeignKey(
        SettlementTx, null=True, blank=True, on_delete=models.PROTECT, related_name="attempts"
    )
    batch = models.ForeignKey(
        SettlementBatch, null=True, blank=True, on_delete=models.PROTECT, related_name="attempts"
    )
    tx_hash = models.CharField(max_length=66, unique=True)
    nonce = models.BigIntegerField()
    max_fee_per_gas = UintField()
    max_priority_fee_per_gas = UintField()
    gas_limit = models.BigIntegerField()
    raw_tx = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(settlement__isnull=True) ^ Q(batch__isnull=True),
                name="attempt_of_settlement_or_batch",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.tx_hash} (nonce {self.nonce})"
