package protocol

import "testing"

func BenchmarkCheckPayload(b *testing.B) {
	p := []byte(`{"v":1,"hr":72,"spo2":98,"nibp":{"sys":120,"dia":80},"mode":"infusing","rate_ml_h":125.5,"vtbi_ml":500,"seq":123456}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := CheckPayload(p); err != nil {
			b.Fatal(err)
		}
	}
}
