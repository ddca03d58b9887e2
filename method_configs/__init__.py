"""Method specifications registered with nerfstudio (installed as styleme3d_ns.method_configs)."""
