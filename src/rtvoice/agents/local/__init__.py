"""The offline local agent (optional extra ``local``; espeak-ng is GPL-3 and is only imported here)."""
