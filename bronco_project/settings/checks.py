"""What production refuses. Kept as a pure function so tests can call it directly."""


def production_problems(
    *,
    debug: bool,
    secret_key: str,
    dev_secret_key: str,
    database_url: str,
    dev_database_url: str,
    vault_addr: str,
    vault_token: str = "",
    vault_role_id: str = "",
    vault_secret_id: str = "",
) -> list[str]:
    """Every development default found, each named with what to set instead."""
    problems = []
    if debug:
        problems.append("DJANGO_DEBUG is on; set DJANGO_DEBUG=false")
    if secret_key == dev_secret_key or len(secret_key) < 32:
        problems.append("DJANGO_SECRET_KEY is the dev key or shorter than 32 characters")
    if database_url == dev_database_url:
        problems.append("DATABASE_URL is the dev default with no password; set DATABASE_URL")
    if not vault_addr:
        problems.append(
            "VAULT_ADDR is not set; production reads the trade password and the operator "
            "key only from Vault"
        )
    elif not vault_token and not (vault_role_id and vault_secret_id):
        problems.append(
            "Vault credentials missing; set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"
        )
    return problems
