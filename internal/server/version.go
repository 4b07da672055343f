package server

// Version is Ward's version, set at build time with
// -ldflags "-X github.com/wardhq/ward/internal/server.Version=…".
var Version = "0.1.0-dev"
