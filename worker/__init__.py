"""oubli: carries out GDPR erasure and export requests across every system that holds a customer's data."""
