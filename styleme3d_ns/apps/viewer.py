"""`styleme3d-viewer`: nerfstudio's `ns-viewer`, serving this machine only unless told otherwise.

`ns-viewer` replaces a run's viewer settings with its own defaults, whose `websocket_host` is 0.0.0.0: every network
the machine is on can open the scene. Our method configs already bind `ns-train`'s viewer to 127.0.0.1; this is
`ns-viewer` with the same default. `--viewer.websocket-host 0.0.0.0` opens it to the network deliberately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tyro
from nerfstudio.scripts.viewer.run_viewer import RunViewer, ViewerConfigWithoutNumRays

from styleme3d_ns.method_configs.common import LOCAL_VIEWER_HOST


@dataclass
class LocalRunViewer(RunViewer):
    """Load a run's checkpoint and start the viewer on 127.0.0.1 (as ns-viewer, but private by default)."""

    viewer: ViewerConfigWithoutNumRays = field(
        default_factory=lambda: ViewerConfigWithoutNumRays(websocket_host=LOCAL_VIEWER_HOST)
    )
    """Viewer configuration (--viewer.websocket-host 0.0.0.0 serves other machines too)."""


def entrypoint() -> None:
    """Console script `styleme3d-viewer`."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(tyro.conf.FlagConversionOff[LocalRunViewer]).main()


if __name__ == "__main__":
    entrypoint()
