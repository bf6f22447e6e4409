"""Read-mostly admin views of what the chain app records."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from chain.exceptions import ChainError
from chain.models import (
    ChainCursor,
    ChainEvent,
    ContractDeployment,
    NonceSequence,
    QuarantinedLog,
    SettlementAttempt,
    SettlementTx,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(ChainEvent)
class ChainEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "block_number", "tx_hash", "log_index", "order_id", "removed_at")
    list_filter = ("name",)
    search_fields = ("tx_hash",)


@admin.register(QuarantinedLog)
class QuarantinedLogAdmin(ReadOnlyAdmin):
    list_display = ("id", "reason", "address", "tx_hash", "log_index", "created_at", "resolved_at")
    list_filter = ("reason",)
    search_fields = ("tx_hash", "address")
    actions = ("reprocess",)

    @admin.action(description="Re-process (after a fix): act on the log if still on chain")
    def reprocess(self, request: HttpRequest, queryset: QuerySet) -> None:
        from chain.ingest import quarantined_log_reprocess
        from chain.listener import ChainListener, ListenerConfig

        actor = f"admin:{request.user.get_username()}"
        done = 0
        try:
            listener = ChainListener(ListenerConfig.from_settings())
            for row in queryset.filter(resolved_at=None).order_by("block_number", "log_index"):
                done += quarantined_log_reprocess(
                    quarantined_id=row.pk,
                    vault=listener.config.vault,
                    canonical=listener.log_on_chain,
                    actor=actor,
                )
        except ChainError as exc:  # the node is away: nothing of the rest was touched
            left = queryset.filter(resolved_at=None).count()
            self.message_user(
                request,
                f"{done} re-processed, {left} still quarantined: the node could not be asked "
                f"({type(exc).__name__}: {exc}); try again once it answers",
                messages.ERROR,
            )
            return
        left = queryset.filter(resolved_at=None).count()
        level = messages.SUCCESS if not left else messages.WARNING
        self.message_user(request, f"{done} re-processed, {left} still quarantined", level)


class SettlementAttemptInline(admin.TabularInline):
    model = SettlementAttempt
    extra = 0
    can_delete = False
    fields = ("tx_hash", "nonce", "max_fee_per_gas", "max_priority_fee_per_gas", "created_at")
    readonly_fields = fields


@admin.register(SettlementTx)
class SettlementTxAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "onchain_id", "order_id", "status", "nonce", "tx_hash", "sent_at")
    list_filter = ("kind", "status", "already_settled")
    search_fields = ("tx_hash",)
    inlines = (SettlementAttemptInline,)


admin.site.register(ChainCursor, ReadOnlyAdmin)
admin.site.register(ContractDeployment, ReadOnlyAdmin)
admin.site.register(NonceSequence, ReadOnlyAdmin)
