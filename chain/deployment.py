"""Deploying the reference contract set and finding it again.

`contracts_deploy` works on the chain only (tests call it directly); `deployment_ensure`
records the result per chain id in the database and reuses it on the next run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from django.conf import settings

from chain.client import ChainClient, address_of_key, artifacts, symbol_to_bytes32
from chain.exceptions import NotConfigured
from chain.models import ContractDeployment
from core.money import usdt_to_units

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContractSet:
    chain_id: int
    vault: str
    usdt: str
    tokens: Mapping[str, str] = field(default_factory=dict)
    deploy_block: int = 0


def contracts_deploy(
    *,
    client: ChainClient,
    deployer_key: str,
    operator_address: str,
    symbols: Iterable[str],
    usdt_address: str = "",
    demo_users: Iterable[str] = (),
    demo_usdt_units: int = 0,
    reserve_usdt_units: int = 0,
) -> ContractSet:
    """Deploy MockUSDT (unless `usdt_address` is given), the vault (deployer = admin,
    `operator_address` = operator), list `symbols`, and on dev chains fund demo users and the
    vault's payout reserve with mock USDT. Not idempotent by itself: see deployment_ensure."""
    deployer = address_of_key(deployer_key)
    first_block = client.block_number() + 1
    mock = not usdt_address
    if mock:
        receipt = client.transact(
            private_key=deployer_key, contract="MockUSDT", address=None, args=(deployer,)
        )
        usdt_address = receipt.contract_address or ""
    receipt = client.transact(
        private_key=deployer_key,
        contract="BroncoVault",
        address=None,
        args=(usdt_address, deployer, operator_address),
    )
    vault = receipt.contract_address or ""
    tokens = vault_list_symbols(
        client=client, deployer_key=deployer_key, vault=vault, symbols=symbols
    )
    vault_set_fee_schedule(client=client, deployer_key=deployer_key, vault=vault)
    if mock:
        for user in demo_users:
            client.transact(
                private_key=deployer_key,
                contract="MockUSDT",
                address=usdt_address,
                fn="mint",
                args=(user, demo_usdt_units),
            )
        if reserve_usdt_units:
            client.transact(
                private_key=deployer_key,
                contract="MockUSDT",
                address=usdt_address,
                fn="mint",
                args=(vault, reserve_usdt_units),
            )
    return ContractSet(
        chain_id=client.chain_id(),
        vault=vault,
        usdt=usdt_address,
        tokens=tokens,
        deploy_block=first_block,
    )


def fee_schedule_onchain() -> tuple[int, int]:
    """Bronco's published fee schedule (NETTING_FEE_RATE, NETTING_FEE_FLAT_USDT) as the
    vault stores it: (rate in parts per million, flat fee in USDT base units). Raises
    ValueError for a rate finer than one part per million."""
    ppm = settings.NETTING_FEE_RATE * 1_000_000
    if ppm != ppm.to_integral_value():
        raise ValueError(f"NETTING_FEE_RATE {settings.NETTING_FEE_RATE} is finer than 1 ppm")
    return int(ppm), usdt_to_units(settings.NETTING_FEE_FLAT_USDT)


def vault_set_fee_schedule(*, client: ChainClient, deployer_key: str, vault: str) -> None:
    """Publish Bronco's fee schedule in the vault (admin role), unless it is there already:
    the vault refuses any settlement charging more (FeeAboveSchedule)."""
    rate, flat = fee_schedule_onchain()
    current = (
        client.call("BroncoVault", vault, "feeRatePpm"),
        client.call("BroncoVault", vault, "feeFlat"),
    )
    if current != (rate, flat):
        client.transact(
            private_key=deployer_key,
            contract="BroncoVault",
            address=vault,
            fn="setFeeSchedule",
            args=(rate, flat),
        )


def vault_list_symbols(
    *, client: ChainClient, deployer_key: str, vault: str, symbols: Iterable[str]
) -> dict[str, str]:
    """List every symbol not yet listed; return symbol -> token address for all of them."""
    tokens = {}
    for symbol in symbols:
        key = symbol_to_bytes32(symbol)
        if not client.call("BroncoVault", vault, "isListed", key):
            client.transact(
                private_key=deployer_key,
                contract="BroncoVault",
                address=vault,
                fn="listSymbol",
                args=(key, f"Bronco {symbol}", f"b{symbol}"),
            )
        tokens[symbol] = client.call("BroncoVault", vault, "tokenOf", key)
    return tokens


def deployment_ensure(*, client: ChainClient, redeploy: bool = False) -> tuple[ContractSet, bool]:
    """The recorded contract set for this chain, deploying it when there is none or when its
    vault has no code any more (a fresh dev chain). Returns (set, deployed_now). Symbols added
    to settings.BRONCO_SYMBOLS since are listed on the existing vault."""
    chain_id = client.chain_id()
    record = ContractDeployment.objects.filter(chain_id=chain_id).first()
    symbols = list(settings.BRONCO_SYMBOLS)
    if record and not redeploy and client.code_at(record.vault_address):
        tokens = vault_list_symbols(
            client=client,
            deployer_key=settings.CHAIN_DEPLOYER_PRIVATE_KEY,
            vault=record.vault_address,
            symbols=symbols,
        )
        if tokens != record.tokens:
            record.tokens = tokens
            record.save(update_fields=["tokens", "updated_at"])
        return _from_record(record), False
    dev = chain_id in settings.CHAIN_DEV_CHAIN_IDS
    if not dev and not settings.CHAIN_USDT_ADDRESS:
        raise NotConfigured("CHAIN_USDT_ADDRESS is required outside dev chains")
    deployed = contracts_deploy(
        client=client,
        deployer_key=settings.CHAIN_DEPLOYER_PRIVATE_KEY,
        operator_address=address_of_key(settings.CHAIN_OPERATOR_PRIVATE_KEY),
        symbols=symbols,
        usdt_address=settings.CHAIN_USDT_ADDRESS,
        demo_users=settings.CHAIN_DEMO_USERS if dev else (),
        demo_usdt_units=settings.CHAIN_DEMO_USDT_UNITS,
        reserve_usdt_units=settings.CHAIN_DEV_RESERVE_USDT_UNITS if dev else 0,
    )
    ContractDeployment.objects.update_or_create(
        chain_id=chain_id,
        defaults={
            "vault_address": deployed.vault,
            "usdt_address": deployed.usdt,
            "tokens": dict(deployed.tokens),
            "deploy_block": deployed.deploy_block,
            "artifacts_sha256": artifacts()["sources_sha256"],
        },
    )
    logger.info("contracts deployed", extra={"chain_id": chain_id, "vault": deployed.vault})
    return deployed, True


def _from_record(record: ContractDeployment) -> ContractSet:
    return ContractSet(
        chain_id=record.chain_id,
        vault=record.vault_address,
        usdt=record.usdt_address,
        tokens=dict(record.tokens),
        deploy_block=record.deploy_block,
    )


def contract_set() -> ContractSet:
    """The contracts the backend works with: settings.CHAIN_VAULT_ADDRESS when set (USDT and
    token addresses read from the vault are then the caller's job), else the recorded
    deployment for settings.CHAIN_ID."""
    if settings.CHAIN_VAULT_ADDRESS:
        record = ContractDeployment.objects.filter(
            chain_id=settings.CHAIN_ID, vault_address__iexact=settings.CHAIN_VAULT_ADDRESS
        ).first()
        if record:
            return _from_record(record)
        return ContractSet(
            chain_id=settings.CHAIN_ID,
            vault=settings.CHAIN_VAULT_ADDRESS,
            usdt=settings.CHAIN_USDT_ADDRESS,
            deploy_block=settings.CHAIN_START_BLOCK,
        )
    record = ContractDeployment.objects.filter(chain_id=settings.CHAIN_ID).first()
    if record is None:
        raise NotConfigured(
            f"no vault for chain {settings.CHAIN_ID}: run deploy_contracts or set "
            "CHAIN_VAULT_ADDRESS"
        )
    return _from_record(record)
