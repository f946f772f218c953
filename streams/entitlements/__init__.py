"""billing.entitlements → Keycloak realm roles (the SSO bridge)."""
