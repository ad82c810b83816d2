"""vsnap: a storage appliance's management server."""
