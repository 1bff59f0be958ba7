"""`platform`: the command-line entry point. Commands parse arguments and call the packages."""

from __future__ import annotations

import logging
import os
import warnings

import click

from cli.ab import ab_group
from cli.data import data_group
from cli.demo import demo_cmd
from cli.export import export_cmd
from cli.improve import improve_cmd
from cli.monitor import monitor_cmd
from cli.registry_cmd import registry_group
from cli.review import review_group
from cli.rollout import rollout_group
from cli.serve import serve_cmd
from cli.train import eval_cmd, merge_cmd, train_cmd


def _quiet_libraries() -> None:
    """Keep library chatter (progress bars, advisory warnings) out of the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    # bitsandbytes warns that an optional Hub kernel is absent; we never fetch it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lora-platform")
def cli() -> None:
    """Train LoRA adapters, keep them in a versioned registry, serve many on one base model."""
    _quiet_libraries()


cli.add_command(train_cmd)
cli.add_command(eval_cmd)
cli.add_command(merge_cmd)
cli.add_command(export_cmd)
cli.add_command(registry_group)
cli.add_command(serve_cmd)
cli.add_command(demo_cmd)
cli.add_command(ab_group)
cli.add_command(rollout_group)
cli.add_command(review_group)
cli.add_command(data_group)
cli.add_command(monitor_cmd)
cli.add_command(improve_cmd)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
