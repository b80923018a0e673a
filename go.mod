module github.com/credvm/credvm

go 1.26.8

require filippo.io/age v1.3.2

require (
	filippo.io/hpke v0.4.0 // indirect
	github.com/pelletier/go-toml/v2 v2.4.3 // indirect
	golang.org/x/crypto v0.55.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/term v0.48.0 // indirect
)
