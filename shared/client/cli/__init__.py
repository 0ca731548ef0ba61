"""The ``recsys`` command line: ``recsys --help`` lists the commands.

Built with click (commands) and rich (tables, the live progress bar). The
console script points at :func:`main`.
"""

from __future__ import annotations

from shared.client.cli.data import data_group, dataset
from shared.client.cli.keys import keys_group
from shared.client.cli.main import cli, main
from shared.client.cli.recommend import recommend
from shared.client.cli.schedule import schedule_group, serve
from shared.client.cli.training import cancel, delete_model, models, status, train, webhook_secret
from shared.client.cli.tune import tune

for _command in (keys_group, data_group, dataset, train, status, models, cancel, delete_model,
                 recommend, webhook_secret, tune, schedule_group, serve):
    cli.add_command(_command)

__all__ = ["cli", "main"]
