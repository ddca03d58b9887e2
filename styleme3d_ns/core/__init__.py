"""Ground floor: user-facing errors, atomic writes, safe torch loading, config defaults; imports nothing of ours."""
