// `hwlab image build <recipe>`: build (or reuse) a guest image from
// images/<recipe>.yaml without running a lab; prints the root disk's path.
import { buildImage } from '../image/build.ts';
import { loadImageRecipe } from '../image/recipe.ts';
import { Progress } from '../util/progress.ts';
import type { CommandGroup } from './command.ts';

export const imageCommands: CommandGroup = {
  name: 'image',
  summary: 'guest images',
  subcommands: [{
    name: 'image build',
    summary: 'build (or reuse) the guest image images/<recipe>.yaml',
    args: '<recipe>',
    positionals: { min: 1, max: 1 },
    options: {},
    async handler(a) {
      const recipe = await loadImageRecipe(a.positionals[0]);
      const img = await new Progress().run(`image ${recipe.name}`, (s) => buildImage(recipe, s));
      process.stdout.write(`${img.rootDisk}\n`);
      return 0;
    },
  }],
};
