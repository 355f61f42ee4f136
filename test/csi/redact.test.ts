import { redact } from '../../src/csi/handler';

describe('redact', () => {
  it('masks secrets and mount flags, and cuts the grant secret off export names', () => {
    const request = {
      volume_id: 'pool:1:uuid',
      secrets: { token: 'hunter2' },
      volume_capability: { mount: { mount_flags: ['discard', 'key=abc'] } },
      publish_context: {
        endpoint: '10.0.0.1:10809',
        export: 'vol1/s3cret',
        growableExport: 'vol1.grow/s3cret',
      },
    };
    expect(redact(request)).toEqual({
      volume_id: 'pool:1:uuid',
      secrets: { token: '***' },
      volume_capability: { mount: { mount_flags: ['***', '***'] } },
      publish_context: { endpoint: '10.0.0.1:10809', export: 'vol1/…', growableExport: 'vol1.grow/…' },
    });
    expect(JSON.stringify(redact(request))).not.toMatch(/s3cret|hunter2|key=abc/);
  });
});
