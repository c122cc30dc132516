//go:build tools

// The package this module builds, so `go mod tidy` keeps its requirements.
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane"
)
