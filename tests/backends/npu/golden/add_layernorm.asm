; NPU program for rngd (8 core(s), 128x128 ws, charged at bf16)
; 29 instructions; DRAM buffers:
;   buf 0: x @0x0 (3840 bytes)
;   buf 1: r @0xf00 (3840 bytes)
;   buf 2: s @0x1e00 (3840 bytes)
;   buf 3: y @0x2d00 (3840 bytes)
;   op 0: Add node
;   op 1: LayerNormalization node_1
ld      c0 buf=0 off=0x0 rows=1 bytes=960 stride=3840 sram=0x0 op=0
ld      c0 buf=1 off=0x0 rows=1 bytes=960 stride=3840 sram=0x0 op=0 sig=ld>vx
vec     c0 fn=add r0=0 r1=1 elems=480 src=0x0 dst=0x400000 nin=2 op=0 wait=ld>vx sig=vx>st
st      c0 buf=2 off=0x0 rows=1 bytes=960 stride=3840 sram=0x400000 op=0 wait=vx>st
ld      c1 buf=0 off=0x3c0 rows=1 bytes=960 stride=3840 sram=0x0 op=0
ld      c1 buf=1 off=0x3c0 rows=1 bytes=960 stride=3840 sram=0x0 op=0 sig=ld>vx
vec     c1 fn=add r0=1 r1=2 elems=480 src=0x0 dst=0x400000 nin=2 op=0 wait=ld>vx sig=vx>st
st      c1 buf=2 off=0x3c0 rows=1 bytes=960 stride=3840 sram=0x400000 op=0 wait=vx>st
ld      c2 buf=0 off=0x780 rows=1 bytes=960 stride=3840 sram=0x0 op=0
ld      c2 buf=1 off=0x780 rows=1 bytes=960 stride=3840 sram=0x0 op=0 sig=ld>vx
vec     c2 fn=add r0=2 r1=3 elems=480 src=0x0 dst=0x400000 nin=2 op=0 wait=ld>vx sig=vx>st
st      c2 buf=2 off=0x780 rows=1 bytes=960 stride=3840 sram=0x400000 op=0 wait=vx>st
ld      c3 buf=0 off=0xb40 rows=1 bytes=960 stride=3840 sram=0x0 op=0
ld      c3 buf=1 off=0xb40 rows=1 bytes=960 stride=3840 sram=0x0 op=0 sig=ld>vx
vec     c3 fn=add r0=3 r1=4 elems=480 src=0x0 dst=0x400000 nin=2 op=0 wait=ld>vx sig=vx>st
st      c3 buf=2 off=0xb40 rows=1 bytes=960 stride=3840 sram=0x400000 op=0 wait=vx>st
barrier c* op=1
ld      c0 buf=2 off=0x0 rows=1 bytes=960 stride=3840 sram=0x0 op=1 sig=ld>vx
vec     c0 fn=layernorm r0=0 r1=1 elems=480 src=0x0 dst=0x400000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c0 buf=3 off=0x0 rows=1 bytes=960 stride=3840 sram=0x400000 op=1 wait=vx>st
ld      c1 buf=2 off=0x3c0 rows=1 bytes=960 stride=3840 sram=0x0 op=1 sig=ld>vx
vec     c1 fn=layernorm r0=1 r1=2 elems=480 src=0x0 dst=0x400000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c1 buf=3 off=0x3c0 rows=1 bytes=960 stride=3840 sram=0x400000 op=1 wait=vx>st
ld      c2 buf=2 off=0x780 rows=1 bytes=960 stride=3840 sram=0x0 op=1 sig=ld>vx
vec     c2 fn=layernorm r0=2 r1=3 elems=480 src=0x0 dst=0x400000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c2 buf=3 off=0x780 rows=1 bytes=960 stride=3840 sram=0x400000 op=1 wait=vx>st
ld      c3 buf=2 off=0xb40 rows=1 bytes=960 stride=3840 sram=0x0 op=1 sig=ld>vx
vec     c3 fn=layernorm r0=3 r1=4 elems=480 src=0x0 dst=0x400000 nin=1 op=1 wait=ld>vx sig=vx>st
st      c3 buf=3 off=0xb40 rows=1 bytes=960 stride=3840 sram=0x400000 op=1 wait=vx>st
