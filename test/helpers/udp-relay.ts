// A UDP relay for fault tests: it listens on a loopback address and forwards every
// datagram to one target, unless the test's `pass` function says to drop it. It keeps a
// bounded number of the datagrams it saw, so a test can replay them later.

import dgram from 'node:dgram';

export class UdpRelay {
  /** Decides per datagram whether it goes through; replaced freely by the test. */
  pass: (datagram: Buffer) => boolean = () => true;
  readonly seen: Buffer[] = [];
  forwarded = 0;
  dropped = 0;
  private readonly socket = dgram.createSocket('udp4');
  port = 0;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly host = '127.0.0.1',
    private readonly seenMax = 256,
  ) {
    this.socket.on('message', (datagram) => {
      if (this.seen.length < this.seenMax) this.seen.push(Buffer.from(datagram));
      if (!this.pass(datagram)) {
        this.dropped += 1;
        return;
      }
      this.forwarded += 1;
      this.socket.send(datagram, this.target.port, this.target.host);
    });
  }

  async start(port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.socket.once('error', reject);
      this.socket.bind({ address: this.host, port }, () => resolve());
    });
    this.port = this.socket.address().port;
    return this.port;
  }

  /** Sends a datagram to the target from the relay's own socket (replays and forgeries). */
  inject(datagram: Buffer): void {
    this.socket.send(datagram, this.target.port, this.target.host);
  }

  stop(): void {
    this.socket.close();
  }
}
