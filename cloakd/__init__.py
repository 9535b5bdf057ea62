"""cloakd: cloak faces and strip metadata before photos go online."""
