"""Human review pages (`platform review serve`, `/review/` of `platform serve`)."""
