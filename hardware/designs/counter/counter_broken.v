// DELIBERATELY BROKEN copy of counter.v: the LED bits are wired in reverse order (led0 gets
// the counter's most significant bit), a classic pin-mapping mistake. checks.toml must fail it:
// led0 blinks at 1/8 of its frequency and the LEDs do not count up.
module counter_broken #(
    parameter integer PRESCALE = 23
) (
    input  wire clk,
    output wire led0,
    output wire led1,
    output wire led2,
    output wire led3
);
  reg [PRESCALE+3:0] count = 0;

  always @(posedge clk) count <= count + 1'b1;

  assign {led0, led1, led2, led3} = count[PRESCALE+3:PRESCALE];
endmodule
