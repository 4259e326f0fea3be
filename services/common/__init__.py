"""Small pieces every service uses: the component registry and the config-loading rules."""
