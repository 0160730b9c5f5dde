"""The sweep files that come with robustgrid (package data): `robustgrid sweeps` lists them,
`robustgrid run NAME` runs one by name."""
