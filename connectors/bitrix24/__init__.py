"""Bitrix24 REST: the gateway that owns every detail of the wire protocol."""
