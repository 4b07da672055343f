package api

import "github.com/danielgtaylor/huma/v2"

// Operations returns every operation huma serves for cfg, for tests that
// must cover them all.
func Operations(cfg Config) ([]*huma.Operation, error) {
	_, a, err := build(cfg)
	if err != nil {
		return nil, err
	}
	var ops []*huma.Operation
	for _, item := range a.OpenAPI().Paths {
		for _, op := range []*huma.Operation{item.Get, item.Put, item.Post, item.Delete, item.Patch, item.Head, item.Options, item.Trace} {
			if op != nil {
				ops = append(ops, op)
			}
		}
	}
	return ops, nil
}
