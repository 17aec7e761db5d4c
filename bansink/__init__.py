"""bansink: a syslog sink that bans brute-force logins with nftables."""

__version__ = "0.1.0"
