import { escapeMarkdown } from '../../workflows/details';

/**
 * A VM's name is the tenant's text and goes into the Web UI's Markdown (the migration's current details): it must
 * come out inert. The UI's renderer is not run here; what is checked is that no Markdown or HTML construct survives.
 */
test("a tenant's VM name cannot make a link, an image, HTML, emphasis, code, a heading or break the details table", () => {
  const hostile = '[click](https://evil.example) ![x](https://evil.example/p.png) <img src=x onerror=alert(1)> **b** `c` | cell\n# heading';
  const out = escapeMarkdown(hostile);
  expect(out).not.toMatch(/(?<!\\)\[/); // every [ escaped: no link or image
  expect(out).not.toMatch(/(?<!\\)[*`|#!]/);
  expect(out).not.toContain('<');
  expect(out).not.toContain('\n');
  expect(out).toContain('&lt;img');
  expect(escapeMarkdown('web-01 db.primary')).toBe('web-01 db.primary'); // plain names unchanged
});
