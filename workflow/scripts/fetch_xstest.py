"""Snakemake adapter for rule `fetch_xstest`: the pinned XSTest file, hash-verified."""

from refusal_ablation.downloads import download_file
from refusal_ablation.runtime import job_logging

with job_logging(snakemake.log[0]):
    download_file(snakemake.params.url, snakemake.output.csv, snakemake.params.sha256)
