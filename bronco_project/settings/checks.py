"""What production refuses. Kept as a pure function so tests can call it directly."""


def production_problems(
    *,
    debug: bool,
    secret_key: str,
    dev_secret_key: str,
    database_url: str,
    dev_database_url: str,
) -> list[str]:
    problems = []
    if debug:
        problems.append("DJANGO_DEBUG is on; set DJANGO_DEBUG=false")
    if secret_key == dev_secret_key or len(secret_key) < 32:
        problems.append("DJANGO_SECRET_KEY is the dev key or shorter than 32 characters")
    if database_url == dev_database_url:
        problems.append("DATABASE_URL is the dev default with no password; set DATABASE_URL")
    return problems
