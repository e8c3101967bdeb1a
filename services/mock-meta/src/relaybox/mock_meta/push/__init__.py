"""The FCM-like push gateway mock (docs/messenger/push-gateway.md) with simulated networks."""
