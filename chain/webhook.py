"""Alchemy-style webhooks (address activity, custom log webhooks) as hints for the listener.

`POST /chain/webhook` with the provider's JSON. What is guaranteed:

- The signature is checked before anything else is read: `X-Alchemy-Signature` must be the
  hex HMAC-SHA256 of the raw body under the signing key, secret `chain_webhook_signing_key`
  (Vault through `core.secrets`; `CHAIN_WEBHOOK_SIGNING_KEY` in dev and tests), compared in
  constant time. Missing or wrong: 401 and nothing written. A body over
  `CHAIN_WEBHOOK_MAX_BODY_BYTES`: 413, unread. The key unreadable: 503 (the provider retries).
  (Alchemy's Webhooks Quickstart, https://www.alchemy.com/reference/notify-api: the hex
  HMAC-SHA256 of the raw body under the webhook's own signing key, no prefix or timestamp.)
- The payload is only a hint: it names transaction hashes and nothing else is taken from it.
  For each, the receipt is fetched from Bronco's own node. A transaction the node does not
  have (forged, reorged away, not yet mined) yields nothing. For one it has, the vault's logs
  of that block are read with `eth_getLogs` and those of that transaction at the receipt's
  block hash go through the listener's own path, `chain.ingest.chain_logs_replay`: the same
  decoding, quarantine, one order per vault id, idempotent, so a duplicate delivery makes
  one order.
- Confirmations: only blocks at or below the listener's checkpoint (which covers confirmed
  blocks only, by count or finality tag) are ingested here. A transaction above it is left
  to the listener, which reads every confirmed range from `eth_getLogs` anyway and so covers
  it without any record of the hint; the answer lists it as `pending`. What a webhook adds
  is a second source for logs the node's `eth_getLogs` left out below the checkpoint.

The answer is 200 with what was done (`ingested`, `duplicates`, `pending`, `unknown`), so a
provider's redelivery of the same payload is harmless.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_POST

from chain.client import chain_client
from chain.deployment import contract_set
from chain.exceptions import ChainError
from chain.ingest import chain_logs_replay
from chain.models import ChainCursor
from core.secrets import SecretUnavailable, get_secret

logger = logging.getLogger(__name__)

ACTOR = "chain_webhook"
SIGNING_KEY_SECRET = "chain_webhook_signing_key"
SIGNATURE_HEADER = "HTTP_X_ALCHEMY_SIGNATURE"
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


@sensitive_variables("key")
def signature_valid(body: bytes, signature: str | None) -> bool:
    """Is `signature` the hex HMAC-SHA256 of `body` under the signing key? Constant-time.
    Raises SecretUnavailable when the key cannot be read."""
    if not signature:
        return False
    key = get_secret(SIGNING_KEY_SECRET)
    expected = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
    # As bytes: compare_digest refuses non-ASCII str, and a header may carry anything.
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected.encode(), given)


def hinted_tx_hashes(payload: Any) -> list[str]:
    """The transaction hashes an Alchemy payload names, lower-case, first seen first:
    ADDRESS_ACTIVITY (`event.activity[].hash`, `.log.transactionHash`) and custom GraphQL
    log webhooks (`event.data.block.logs[].transaction.hash`). Anything else is ignored."""
    found: dict[str, None] = {}
    for candidate in _candidates(payload):
        if isinstance(candidate, str) and _TX_HASH.match(candidate):
            found.setdefault(candidate.lower())
    return list(found)


def _candidates(payload: Any) -> Iterator[Any]:
    event = payload.get("event") if isinstance(payload, dict) else None
    if not isinstance(event, dict):
        return
    for activity in _list(event.get("activity")):
        if isinstance(activity, dict):
            yield activity.get("hash")
            log = activity.get("log")
            if isinstance(log, dict):
                yield log.get("transactionHash")
    data = event.get("data")
    block = data.get("block") if isinstance(data, dict) else None
    if isinstance(block, dict):
        for log in _list(block.get("logs")):
            transaction = log.get("transaction") if isinstance(log, dict) else None
            if isinstance(transaction, dict):
                yield transaction.get("hash")


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def webhook_ingest(tx_hashes: list[str]) -> dict[str, Any]:
    """Ingest the vault's logs of each hinted transaction the node has, at or below the
    checkpoint (see the module docstring). Node errors propagate (ChainError)."""
    client = chain_client()
    vault = contract_set().vault
    result: dict[str, Any] = {"ingested": 0, "duplicates": 0, "pending": [], "unknown": []}
    cursor = ChainCursor.objects.filter(chain_id=settings.CHAIN_ID, address=vault).first()
    for tx_hash in tx_hashes:
        receipt = client.receipt(tx_hash)
        if receipt is None:
            result["unknown"].append(tx_hash)
            continue
        if cursor is None or receipt.block_number > cursor.block_number:
            result["pending"].append(tx_hash)
            continue
        logs = [
            log
            for log in client.get_logs(
                from_block=receipt.block_number, to_block=receipt.block_number, address=vault
            )
            if log.tx_hash == receipt.tx_hash and log.block_hash == receipt.block_hash
        ]
        if not logs:
            continue
        batch = chain_logs_replay(chain_id=settings.CHAIN_ID, vault=vault, logs=logs, actor=ACTOR)
        result["ingested"] += batch.committed
        result["duplicates"] += batch.duplicates
    return result


@csrf_exempt
@require_POST
def webhook_view(request: HttpRequest) -> JsonResponse:
    """The endpoint (see the module docstring)."""
    limit = settings.CHAIN_WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return JsonResponse({"error": "bad Content-Length"}, status=400)
    if declared > limit:
        return JsonResponse({"error": f"body over {limit} bytes"}, status=413)
    body = request.read(limit + 1)
    if len(body) > limit:
        return JsonResponse({"error": f"body over {limit} bytes"}, status=413)
    try:
        valid = signature_valid(body, request.META.get(SIGNATURE_HEADER))
    except SecretUnavailable as exc:
        logger.error("chain webhook: signing key unavailable: %s", exc)
        return JsonResponse({"error": "signing key unavailable"}, status=503)
    if not valid:
        logger.warning("chain webhook refused: missing or wrong signature")
        return JsonResponse({"error": "bad signature"}, status=401)
    try:
        payload = json.loads(body)
    except ValueError:
        return JsonResponse({"error": "body is not JSON"}, status=400)
    tx_hashes = hinted_tx_hashes(payload)
    if len(tx_hashes) > settings.CHAIN_WEBHOOK_MAX_TXS:
        return JsonResponse(
            {"error": f"more than {settings.CHAIN_WEBHOOK_MAX_TXS} transactions"}, status=413
        )
    try:
        result = webhook_ingest(tx_hashes)
    except ChainError as exc:
        logger.warning("chain webhook: node error, the provider will retry: %s", exc)
        return JsonResponse({"error": "node unavailable"}, status=503)
    logger.info("chain webhook: %s", result)
    return JsonResponse({"transactions": len(tx_hashes), **result})
