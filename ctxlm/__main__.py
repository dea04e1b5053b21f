"""`python -m ctxlm` = the `ctxlm` command."""

from ctxlm.commands import app

app()
