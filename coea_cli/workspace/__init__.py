"""The workspace layer: typed, validating access to every artifact (see `core`)."""

from coea_cli.errors import ArtifactError
from coea_cli.workspace.core import Dir, Groups, Workspace, check_name, read_json, read_table
from coea_cli.workspace.history import History, UserSequences, user_sequences
from coea_cli.workspace.sids import (
    Cluster,
    ClusterSpace,
    SidLayout,
    Sids,
    cluster_token,
    sids_table,
    token,
)
from coea_cli.workspace.tracks import MAIN, Serving, Track

__all__ = [
    "MAIN",
    "ArtifactError",
    "Cluster",
    "ClusterSpace",
    "Dir",
    "Groups",
    "History",
    "Serving",
    "SidLayout",
    "Sids",
    "Track",
    "UserSequences",
    "Workspace",
    "check_name",
    "cluster_token",
    "read_json",
    "read_table",
    "sids_table",
    "token",
    "user_sequences",
]
